with transactions as (

    select * from {{ ref('fct_transactions') }}

),

terminals as (

    select
        terminal_id,
        min(tx_datetime) as first_tx_at,
        max(tx_datetime) as last_tx_at,
        count(*) as tx_count,
        count(distinct customer_id) as customer_count,
        round(sum(tx_amount), 2) as total_amount,
        count(*) filter (where is_fraud) as fraud_tx_count
    from transactions
    group by terminal_id

)

select * from terminals
