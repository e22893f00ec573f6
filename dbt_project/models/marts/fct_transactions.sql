with labelled as (

    select * from {{ ref('int_transactions_labelled') }}

),

final as (

    select
        transaction_id,
        tx_datetime,
        tx_date,
        customer_id,
        terminal_id,
        tx_amount,
        is_fraud,
        fraud_reported_at
    from labelled

)

select * from final
