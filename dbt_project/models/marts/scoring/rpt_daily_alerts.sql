{{ config(lookback_days=var('label_delay_days')) }}

with scores as (

    select * from {{ ref('fct_transaction_scores') }}
    where tx_date >= {{ window_start(var('label_delay_days')) }} and tx_date < {{ window_end() }}

),

card_best as (

    select
        *,
        row_number() over (
            partition by tx_date, customer_id
            order by score desc, transaction_id
        ) as card_position
    from scores

),

ranked as (

    select
        *,
        row_number() over (
            partition by tx_date
            order by score desc, customer_id
        ) as alert_rank
    from card_best
    where card_position = 1

),

final as (

    select
        tx_date,
        alert_rank,
        customer_id,
        transaction_id,
        score,
        decision,
        reason_1,
        reason_2,
        reason_3,
        reported_fraud,
        reported_at,
        model_name,
        model_version
    from ranked
    where alert_rank <= 100

)

select * from final
